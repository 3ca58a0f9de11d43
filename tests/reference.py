"""Where the reference fixtures live: ``tests/fixtures/``, kept in the repository so a clone tests alone.

Named ``reference`` rather than ``fixtures`` so that the module does not clash with the ``fixtures/`` folder
beside it (both would be importable as ``fixtures`` from ``tests/``). Each folder's README says how its files
were made and which facts (shapes, tolerances) the tests rely on.
"""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCNET_FIXTURES = FIXTURES / "scnet"
ROFORMER_FIXTURES = FIXTURES / "roformer"
MDX23C_FIXTURES = FIXTURES / "mdx23c"
POLARFORMER_FIXTURES = FIXTURES / "polarformer"
