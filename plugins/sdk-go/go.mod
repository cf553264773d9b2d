module igwplugin

go 1.24
