"""The sshd of a simulated switch: key login for one user, nothing else (no password, no PAM, no
forwarding), on one address. Shared by the lab's TOR and the torshim tests' Linux switch."""

from __future__ import annotations


def sshd_config(listen: str, host_key: str, user: str) -> str:
    return "\n".join(
        [
            f"ListenAddress {listen}",
            "Port 22",
            f"HostKey {host_key}",
            "PidFile none",
            f"AllowUsers {user}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "UsePAM no",
            "StrictModes yes",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "MaxStartups 50",
            "LogLevel VERBOSE",
            "",
        ]
    )
