function FindProxyForURL(url, host) {
    if (/^cvmfs-/.test(host)) {
        return "PROXY squid.example.org:3128";
    }
    return "DIRECT";
}
