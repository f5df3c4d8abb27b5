// Proxy auto-configuration as the WLCG WPAD service generates it for a client whose
// address belongs to a known site: CernVM-FS traffic goes to the site squids (load-balanced
// by the client address), Frontier to the Frontier squids, everything else is NONE.
function FindProxyForURL(url, host) {
    var myip = myIpAddress();
    var ipsort = 0;
    var octets = myip.split(".");
    if (octets.length == 4) {
        ipsort = parseInt(octets[3]) % 2;
    }
    var cvmfsproxies;
    if (isInNet(myip, "137.138.0.0", "255.255.0.0") ||
        isInNet(myip, "188.184.0.0", "255.254.0.0")) {
        // CERN
        if (ipsort == 0) {
            cvmfsproxies = "PROXY http://ca-proxy-meyrin.cern.ch:3128; PROXY http://ca-proxy-prevessin.cern.ch:3128";
        } else {
            cvmfsproxies = "PROXY http://ca-proxy-prevessin.cern.ch:3128; PROXY http://ca-proxy-meyrin.cern.ch:3128";
        }
    } else if (isInNet(myip, "131.225.0.0", "255.255.0.0")) {
        // FNAL
        cvmfsproxies = "PROXY http://squid.fnal.gov:3128";
    }
    if (shExpMatch(url, "*/cvmfs/*") || shExpMatch(url, "http://cvmfs-stratum-one*") ||
        dnsDomainIs(host, ".openhtc.io")) {
        if (cvmfsproxies) {
            return cvmfsproxies + "; DIRECT";
        }
        return "DIRECT";
    }
    if (shExpMatch(url, "http://*/frontier*") || shExpMatch(url, "http://*/Frontier*")) {
        return "PROXY http://cmsfrontier-squid.cern.ch:3128; DIRECT";
    }
    return "NONE";
}
