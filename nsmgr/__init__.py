"""The node's network service manager: puts allocated VFs into pods' network namespaces."""
