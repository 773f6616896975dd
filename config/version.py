"""The li-httpd version, shown in the banner, `ctl status` and the Server header."""

VERSION = "0.1.0"
