"""The run-time type checker the test suite applies to moia (installed by conftest): beartype, with
PEP 484's numeric tower (an int is a valid float, as a type checker reads ``float``)."""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
