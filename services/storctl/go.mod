module storagecp.dev/storctl

go 1.26.8

