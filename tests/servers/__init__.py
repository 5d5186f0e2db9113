"""Local S3 servers (s3rver, Swift + s3api) and a fault-injecting proxy for
the bucketfs tests; see servers.py and faultproxy.py."""
from .servers import (S3Server, S3rver, Swift, aws_bin, free_port, s3rver_available,
                      sigv4_headers, swift_available)
from .faultproxy import FaultProxy

__all__ = ['S3Server', 'S3rver', 'Swift', 'FaultProxy', 'aws_bin', 'free_port',
           's3rver_available', 'sigv4_headers', 'swift_available']
