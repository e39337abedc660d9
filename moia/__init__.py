"""moia"""
