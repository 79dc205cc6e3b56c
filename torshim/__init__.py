"""The DC-network shim: programs the TOR switch port a VF's NIC is cabled to, over NETCONF or CLI."""
