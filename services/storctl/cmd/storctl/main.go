// Command storctl is the operator CLI of storagecp: omdb-like views and
// actions over the services' gRPC APIs. See `storctl help`.
package main

import (
	"os"

	"storagecp.dev/storctl/internal/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}
