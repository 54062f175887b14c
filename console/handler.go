package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
)

//go:embed assets
var assets embed.FS

// csp is the console's Content-Security-Policy: its own script and style
// files only, no inline script, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Handler serves the console's pages: / and /ui/{file}. They hold no
// data, so they are served without a token; the page reads the API with
// the operator's.
func Handler() http.Handler {
	files, _ := fs.Sub(assets, "assets")
	static := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		name := path.Clean("/" + r.URL.Path)
		switch {
		case name == "/" || name == "/ui":
			http.ServeFileFS(w, r, files, "index.html")
		case path.Dir(name) == "/ui":
			r2 := r.Clone(r.Context())
			r2.URL.Path = path.Base(name)
			static.ServeHTTP(w, r2)
		default:
			http.NotFound(w, r)
		}
	})
}
