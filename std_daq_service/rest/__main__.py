import sys

from std_daq_service.rest.start import main

sys.exit(main())
