module storagecp.dev/integration

go 1.26.8
