"""One exception tree for the inventory; only the CLI turns these into exit codes."""


class InventoryError(Exception):
    """Base of every error the inventory raises on purpose."""


class ScanError(InventoryError):
    """The sysfs root cannot be read as a sysfs tree."""


class NotFoundError(InventoryError):
    """No NIC matches the name or PCI address asked for."""


class ConfigError(InventoryError):
    """The inventory config file is missing or invalid."""
