from medclip_nb.cli import main

raise SystemExit(main())
