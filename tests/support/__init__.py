"""Real parts for tests: a moto S3 server in a subprocess and a fault-injecting HTTP proxy."""
