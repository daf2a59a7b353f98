"""`python -m pytest_gradhealth`: the `gradhealth` command."""

from pytest_gradhealth.cli import main

raise SystemExit(main())
