package webhook

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCheckURL(t *testing.T) {
	lan := Policy{Allow: mustAllow(t, "10.1.2.0/24, 127.0.0.1")}
	tests := []struct {
		name   string
		policy Policy
		url    string
		err    string // "" for allowed
	}{
		{"public name", Policy{}, "https://hooks.example.com/x", ""},
		{"public address", Policy{}, "http://93.184.216.34/x", ""},
		{"public IPv6", Policy{}, "http://[2606:2800:220:1::1]/x", ""},
		{"loopback", Policy{}, "http://127.0.0.1:8080/x", "loopback"},
		{"loopback elsewhere in 127/8", Policy{}, "http://127.3.4.5/x", "loopback"},
		{"IPv6 loopback", Policy{}, "http://[::1]:4222/", "loopback"},
		{"IPv4-mapped loopback", Policy{}, "http://[::ffff:127.0.0.1]/", "loopback"},
		{"localhost", Policy{}, "http://localhost:4222/", "loopback"},
		{"a name under localhost", Policy{}, "http://api.localhost/", "loopback"},
		{"private 10/8", Policy{}, "http://10.0.0.5/x", "private"},
		{"private 192.168/16", Policy{}, "http://192.168.1.1/x", "private"},
		{"private 172.16/12", Policy{}, "http://172.20.0.1/x", "private"},
		{"IPv6 unique local", Policy{}, "http://[fd00::1]/x", "private"},
		{"cloud metadata", Policy{}, "http://169.254.169.254/latest/meta-data", "link-local"},
		{"IPv6 link-local", Policy{}, "http://[fe80::1]/x", "link-local"},
		{"unspecified", Policy{}, "http://0.0.0.0:8080/", "not a host"},
		{"carrier-grade NAT", Policy{}, "http://100.64.0.1/", "reserved"},
		{"broadcast", Policy{}, "http://255.255.255.255/", "reserved"},
		{"credentials", Policy{}, "https://user:pass@hooks.example.com/", "credentials"},
		{"no scheme", Policy{}, "hooks.example.com/x", "absolute http"},
		{"other scheme", Policy{}, "ftp://hooks.example.com/", "absolute http"},
		{"allowed network", lan, "http://10.1.2.3/x", ""},
		{"allowed address", lan, "http://127.0.0.1:9/x", ""},
		{"outside the allowed network", lan, "http://10.1.3.3/x", "private"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.CheckURL(tt.url)
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("CheckURL(%q) = %v, want allowed", tt.url, err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("CheckURL(%q) = %v, want an error saying %q", tt.url, err, tt.err)
			}
		})
	}
}

func TestParseAllow(t *testing.T) {
	got, err := ParseAllow(" 10.0.0.0/8,192.168.1.7 ,, ::1")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("::1/128")}
	if !slices.Equal(got, want) {
		t.Errorf("ParseAllow = %v, want %v", got, want)
	}
	if _, err := ParseAllow("intranet"); err == nil {
		t.Error("ParseAllow accepted a name")
	}
}

func mustAllow(t *testing.T, list string) []netip.Prefix {
	t.Helper()
	p, err := ParseAllow(list)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The policy's client checks the address it dials, whatever the URL
// said (a name that resolves to loopback, as in DNS rebinding), and does
// not follow redirects to a second target.
func TestClientChecksDialledAddress(t *testing.T) {
	hits := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- r.URL.Path
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "/second", http.StatusTemporaryRedirect)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]

	// "localhost" passes no address check in the URL when allowed by
	// name only; here the policy allows nothing, and the dial is refused.
	_, err := Policy{}.Client(5*time.Second).Post("http://localhost:"+port+"/x", "text/plain", nil)
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("dial of loopback by name: %v, want ErrForbidden", err)
	}
	select {
	case p := <-hits:
		t.Fatalf("the receiver was reached at %s", p)
	default:
	}

	allowed := Policy{Allow: mustAllow(t, "127.0.0.1")}.Client(5 * time.Second)
	res, err := allowed.Post(srv.URL+"/redirect", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusTemporaryRedirect {
		t.Errorf("status %d, want the 307 itself", res.StatusCode)
	}
	if got := <-hits; got != "/redirect" {
		t.Errorf("first hit %s", got)
	}
	select {
	case p := <-hits:
		t.Errorf("the redirect was followed to %s", p)
	case <-time.After(100 * time.Millisecond):
	}
}

// hosts gives each host at most perHost calls and all at most total,
// queues the rest per host up to queue, and hands freed calls to hosts in
// turn: a slow host's backlog never holds the calls another host needs.
func TestHostsShareCalls(t *testing.T) {
	h := newHosts[int](2, 3, 2)
	type step struct {
		host          string
		v             int
		start, queued bool
	}
	for i, s := range []step{
		{"slow", 1, true, false},
		{"slow", 2, true, false},
		{"slow", 3, false, true},  // slow has its 2 calls
		{"slow", 4, false, true},  // queue of 2
		{"slow", 5, false, false}, // queue full: handed back
		{"fast", 6, true, false},  // another host still gets a call
		{"fast", 7, false, true},  // total of 3 reached
		{"third", 8, false, true},
	} {
		start, queued := h.add(s.host, s.v)
		if start != s.start || queued != s.queued {
			t.Fatalf("step %d: add(%s, %d) = %v, %v; want %v, %v", i, s.host, s.v, start, queued, s.start, s.queued)
		}
	}
	if n := h.held(); n != 7 {
		t.Errorf("held %d, want 7 (3 in flight, 4 waiting)", n)
	}
	// A slow call ends: the freed call goes to the host first in turn
	// with room, slow itself (its 3 waited longest), and then, as calls
	// end, to fast and third before slow's next.
	var order []int
	for _, j := range h.done("slow") {
		order = append(order, j.v)
	}
	for _, j := range h.done("fast") {
		order = append(order, j.v)
	}
	for _, j := range h.done("slow") {
		order = append(order, j.v)
	}
	if want := []int{3, 7, 8}; !slices.Equal(order, want) {
		t.Errorf("started %v, want %v", order, want)
	}
	if w := h.waiting(false); !slices.Equal(w, []int{4}) {
		t.Errorf("waiting %v, want [4]", w)
	}
	if w := h.waiting(true); !slices.Equal(w, []int{4}) || h.held() != 3 {
		t.Errorf("taken %v, held %d; want [4] and the 3 in flight", w, h.held())
	}
}
