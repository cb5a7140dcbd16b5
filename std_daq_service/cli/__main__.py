import sys

from std_daq_service.cli import main

sys.exit(main())
