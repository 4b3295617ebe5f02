"""The client's address, for limits keyed on it (failed sign-ins, sign-ups, django-ratelimit's
``key="ip"`` through RATELIMIT_IP_META_KEY).

Directly served, it is the connection's peer (REMOTE_ADDR) and no header is read: anyone can send
an X-Forwarded-For. Behind SMOLSITE_TRUSTED_PROXIES proxies (default 1 with SMOLSITE_HTTPS=1, else
0), each proxy appends the address it was connected from, so the Nth entry from the right was
written by the outermost trusted proxy; entries left of it are the client's own to forge."""
import ipaddress

from django.conf import settings


def _parse(value):
    """An address, or None: '1.2.3.4', '1.2.3.4:5678', '::1' and '[::1]:5678' are accepted."""
    value = (value or "").strip()
    if value.startswith("[") and "]" in value:
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # IPv4 with a port
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    # An IPv4 client of a dual-stack socket ("::ffff:1.2.3.4") is that IPv4 address, not one more
    # member of the /64 every IPv4 client would then share.
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def client_ip(request):
    peer = _parse(request.META.get("REMOTE_ADDR")) or "0.0.0.0"  # a Unix socket has none
    trusted = getattr(settings, "SMOLSITE_TRUSTED_PROXIES", 0)
    if trusted <= 0:
        return peer
    hops = [h for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    if not hops:
        return peer
    # Fewer entries than proxies: every entry was written by a trusted proxy; the leftmost is the client.
    return _parse(hops[-min(trusted, len(hops))]) or peer


def address_key(request):
    """The client's address as a limit's key: an IPv6 client is its /64 (one host usually holds a
    whole /64, so counting single IPv6 addresses would give it billions of budgets)."""
    ip = client_ip(request)
    if ":" in ip:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address)
    return ip
