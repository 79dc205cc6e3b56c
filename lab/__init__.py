"""nsm-lab: a simulated SR-IOV node and top-of-rack switch on one machine, with no hardware."""
