"""Shell snippets that take systemd units off a host (the delete side of the components)."""

from __future__ import annotations


def stop_for_good(*units: str) -> str:
    """Disable and stop each unit, in the order given, and clear a failed state, so a removed
    service is neither restarted (`nxfarm health --heal` skips disabled units) nor left listed
    by `systemctl --failed`. Order matters: stop a timer before the service it starts, and the
    health check before what it heals."""
    return "; ".join(f"systemctl disable --now {unit} 2>/dev/null || true; "
                     f"systemctl reset-failed {unit} 2>/dev/null || true" for unit in units)


def remove_unit(unit: str) -> str:
    return f"{stop_for_good(unit)}; rm -f /etc/systemd/system/{unit}; systemctl daemon-reload"


def update_unit_file(unit: str, restart: bool) -> str:
    """Install the unit file read on stdin, but reload systemd (and restart the unit) only when
    its text changed: an update that changes nothing else on the host (how the resource is
    deleted, say) must not restart a service that may be running a build."""
    path = f"/etc/systemd/system/{unit}"
    then = f" && (systemctl try-restart {unit} || true)" if restart else ""
    return (f'new=$(mktemp) && cat > "$new" && if cmp -s "$new" {path}; then rm -f "$new"; '
            f'else install -m 0644 "$new" {path} && rm -f "$new" && systemctl daemon-reload{then}; fi')
