"""Protocol cores without I/O: the TUN TCP stack, the SOCKS5 handshake, the DNS decision."""
