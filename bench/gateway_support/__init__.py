"""Support code for bench/gateway.py: processes, load generators and the SkyServe stand-ins."""
