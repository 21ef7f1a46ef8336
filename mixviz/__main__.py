"""``python -m mixviz`` → the CLI."""

from mixviz.cli import main

raise SystemExit(main())
