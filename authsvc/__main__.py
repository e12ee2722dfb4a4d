from authsvc.cli.main import main

raise SystemExit(main())
