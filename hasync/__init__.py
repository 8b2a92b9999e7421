"""hasync: stateful IKEv2/IPsec failover for strongSwan gateways."""

__version__ = "0.1.0"
