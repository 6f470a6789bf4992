from qin.cli import main

raise SystemExit(main())
