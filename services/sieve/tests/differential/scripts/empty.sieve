# no commands: implicit keep
