"""`python -m geodetect` (and `torchrun -m geodetect train …`)."""

from geodetect.cli import entry

entry()
