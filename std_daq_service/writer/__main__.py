import sys

from std_daq_service.writer.start import main

sys.exit(main())
