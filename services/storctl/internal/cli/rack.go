package cli

func rackCommands() []command { return nil }
