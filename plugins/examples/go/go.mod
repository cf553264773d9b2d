module example-router

go 1.24

require igwplugin v0.0.0

replace igwplugin => ../../sdk-go
