package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Policy decides which addresses webhooks may reach. By default only
// public addresses: a webhook names a URL that the API's own processes
// call, and without a policy any tenant could make them reach loopback,
// the private network, cloud metadata (169.254.169.254), inferq's own
// ports or NATS. The zero value is that default.
type Policy struct {
	// Allow are networks webhooks may reach although they are not
	// public, such as an internal receiver's 10.1.2.0/24, or
	// 127.0.0.1/32 in a test.
	Allow []netip.Prefix
}

// ErrForbidden is a webhook target the policy does not allow.
var ErrForbidden = errors.New("webhook target not allowed")

// ParseAllow reads a comma-separated list of networks (CIDR) or single
// addresses, for Policy.Allow.
func ParseAllow(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a network (10.0.0.0/8) or an address", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// nonPublic are networks beyond the netip predicates that are not the
// public internet.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT, often a cloud's internal range
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and broadcast
}

// CheckAddr reports whether a webhook may reach address a.
func (p Policy) CheckAddr(a netip.Addr) error {
	a = a.Unmap()
	for _, n := range p.Allow {
		if n.Contains(a) {
			return nil
		}
	}
	kind := ""
	switch {
	case a.IsLoopback():
		kind = "loopback"
	case a.IsPrivate():
		kind = "private"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		kind = "link-local"
	case a.IsUnspecified(), a.IsMulticast():
		kind = "not a host"
	default:
		for _, n := range nonPublic {
			if n.Contains(a) {
				kind = "reserved"
			}
		}
	}
	if kind == "" {
		return nil
	}
	return fmt.Errorf("%w: %s is a %s address; an operator may allow it with --webhook-allow", ErrForbidden, a, kind)
}

// CheckURL checks a webhook URL when a job names it: an absolute http or
// https URL, without credentials (they would be kept in job records and
// sent to whatever the name resolves to), whose host, when it is an
// address or localhost, the policy allows. Names are checked again on
// every call, against the address actually dialled.
func (p Policy) CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return errors.New("want an absolute http or https URL")
	}
	if u.User != nil {
		return errors.New("credentials in the URL are not accepted; authenticate receivers by the signature (--webhook-secret) or a token in the path")
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		return p.CheckAddr(a)
	}
	if h := strings.TrimSuffix(strings.ToLower(host), "."); h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return p.CheckAddr(netip.AddrFrom4([4]byte{127, 0, 0, 1}))
	}
	return nil
}

// control refuses a connection to an address the policy does not allow.
// It runs after name resolution, on the address dialled, so a name that
// resolves to a public address when checked and a private one when used
// (DNS rebinding) is still refused.
func (p Policy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot read the address %q", ErrForbidden, address)
	}
	return p.CheckAddr(ap.Addr())
}

// Client returns the HTTP client that makes webhook calls under p: each
// call bounded by timeout, only to addresses p allows, without following
// redirects (a 3xx is the receiver's answer, and a failed call), and
// without the environment's proxy, whose address would be checked
// instead of the receiver's.
func (p Policy) Client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout, Control: p.control}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
