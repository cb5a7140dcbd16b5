import sys

from std_daq_service.hp_io_agent.start import main

sys.exit(main())
