from boottorrent.cli import main

raise SystemExit(main())
