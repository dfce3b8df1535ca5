from facetransfer.cli import main

raise SystemExit(main())
