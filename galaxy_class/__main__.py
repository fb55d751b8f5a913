from galaxy_class.cli import main

raise SystemExit(main())
