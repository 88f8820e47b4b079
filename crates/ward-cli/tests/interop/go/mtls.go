// An HTTPS server and client that do their own mutual TLS with Go's
// standard library only, from the files `ward agent --write-dir` keeps:
// svid.pem, svid.key and bundle.pem, read again for every handshake so a
// renewal or a CA rotation is picked up without a restart (the last pair
// that loaded is kept while files are being replaced).
//
//	mtls server DIR                 prints {"addr": …} and serves
//	mtls client DIR URL SPIFFE_ID SECONDS
//	                                calls URL every 50 ms, prints counts
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

type files struct {
	dir  string
	mu   sync.Mutex
	cert *tls.Certificate
	pool *x509.CertPool
}

func (f *files) load() (*tls.Certificate, *x509.CertPool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, err := tls.LoadX509KeyPair(filepath.Join(f.dir, "svid.pem"), filepath.Join(f.dir, "svid.key")); err == nil {
		f.cert = &c
	}
	if pem, err := os.ReadFile(filepath.Join(f.dir, "bundle.pem")); err == nil {
		pool := x509.NewCertPool()
		if pool.AppendCertsFromPEM(pem) {
			f.pool = pool
		}
	}
	if f.cert == nil || f.pool == nil {
		return nil, nil, errors.New("no certificate files yet")
	}
	return f.cert, f.pool, nil
}

func server(dir string) {
	f := &files{dir: dir}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool, err := f.load()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool,
			}, nil
		},
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		panic(err)
	}
	out, _ := json.Marshal(map[string]string{"addr": ln.Addr().String()})
	fmt.Println(string(out))
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaf := r.TLS.PeerCertificates[0]
		id := ""
		if len(leaf.URIs) == 1 {
			id = leaf.URIs[0].String()
		}
		json.NewEncoder(w).Encode(map[string]string{"client": id, "client_serial": leaf.SerialNumber.Text(16)})
	}))
}

// verifyPeer checks the server's chain against the bundle and its SPIFFE
// ID, as go-spiffe does: the address dialled is not in an X509-SVID.
func verifyPeer(pool *x509.CertPool, want string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no server certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return err
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
			return fmt.Errorf("server is %v, not %s", leaf.URIs, want)
		}
		return nil
	}
}

func client(dir, url, want string, seconds int) {
	f := &files{dir: dir}
	ok, failed := 0, 0
	var errs []string
	servers := map[string]bool{}
	clients := map[string]bool{}
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for time.Now().Before(deadline) {
		err := func() error {
			cert, pool, err := f.load()
			if err != nil {
				return err
			}
			// The chain is verified in VerifyConnection (against the bundle,
			// with the SPIFFE ID), not by host name.
			tr := &http.Transport{
				DisableKeepAlives: true,
				TLSClientConfig: &tls.Config{
					MinVersion:         tls.VersionTLS13,
					Certificates:       []tls.Certificate{*cert},
					InsecureSkipVerify: true,
					VerifyConnection:   verifyPeer(pool, want),
				},
				DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			var v map[string]string
			if err := json.Unmarshal(body, &v); err != nil {
				return err
			}
			clients[v["client_serial"]] = true
			servers[resp.TLS.PeerCertificates[0].SerialNumber.Text(16)] = true
			return nil
		}()
		if err != nil {
			failed++
			if len(errs) < 5 {
				errs = append(errs, err.Error())
			}
		} else {
			ok++
		}
		time.Sleep(50 * time.Millisecond)
	}
	keys := func(m map[string]bool) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		return out
	}
	out, _ := json.Marshal(map[string]interface{}{"ok": ok, "failed": failed, "errors": errs, "server_serials": keys(servers), "client_serials": keys(clients)})
	fmt.Println(string(out))
}

func main() {
	switch os.Args[1] {
	case "server":
		server(os.Args[2])
	case "client":
		n, _ := strconv.Atoi(os.Args[5])
		client(os.Args[2], os.Args[3], os.Args[4], n)
	}
}
