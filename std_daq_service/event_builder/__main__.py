import sys

from std_daq_service.event_builder.start import main

sys.exit(main())
