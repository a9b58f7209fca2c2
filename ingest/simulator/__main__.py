from ingest.simulator.command import main

raise SystemExit(main())
