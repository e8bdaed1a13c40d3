// A Caddy binary with the Mercure hub module, for the benchmark only.
// xcaddy would generate the same file; written out so the build is one
// `go build` from the Go module proxy, pinned by go.mod and go.sum.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/dunglas/mercure/caddy"
)

func main() {
	caddycmd.Main()
}
