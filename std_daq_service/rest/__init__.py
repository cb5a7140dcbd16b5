"""REST proxy: HTTP (Flask, served by waitress) in front of the broker, for curl and requests users."""
