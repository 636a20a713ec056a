# Loads are allowed until the end of 2027 (UTC).
package cryptotensors

import rego.v1

default allow := false

allow if time.parse_rfc3339_ns(input.time) < time.parse_rfc3339_ns("2028-01-01T00:00:00Z")

reason := "the license of this model expired on 2028-01-01" if not allow
