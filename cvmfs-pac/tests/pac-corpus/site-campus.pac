/*
 * A typical site PAC file: local names and the intranet go direct, the experiment
 * software through a pair of squids chosen round-robin, the rest through the campus proxy.
 */
var squids = ["squid1.example.edu:3128", "squid2.example.edu:3128"];
var campusProxy = "PROXY proxy.example.edu:8080";

function pick(list, key) {
    var sum = 0;
    for (var i = 0; i < key.length; i++) {
        if (key.charAt(i) == '.') {
            continue;
        }
        sum += parseInt(key.charAt(i));
    }
    return list[sum % list.length];
}

function FindProxyForURL(url, host) {
    var lhost = host.toLowerCase();
    if (isPlainHostName(lhost) || localHostOrDomainIs(lhost, "localhost.example.edu")) {
        return "DIRECT";
    }
    if (dnsDomainIs(lhost, ".intra.example.edu") ||
        isInNet(lhost, "10.0.0.0", "255.0.0.0") ||
        isInNet(lhost, "192.168.0.0", "255.255.0.0")) {
        return "DIRECT";
    }
    if (url.substring(0, 5) == "http:" && (url.indexOf("/cvmfs/") >= 0 || dnsDomainLevels(lhost) > 3)) {
        var first = pick(squids, myIpAddress());
        var second = first === squids[0] ? squids[1] : squids[0];
        return "PROXY " + first + "; PROXY " + second + "; DIRECT";
    }
    return campusProxy + "; SOCKS socks.example.edu:1080";
}
