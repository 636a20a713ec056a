# Only the named inference hosts may load the model.
package cryptotensors

import rego.v1

hosts := {"inference-01", "inference-02"}

default allow := false

allow if input.host.hostname in hosts

reason := sprintf("host %q is not allowed to load this model", [input.host.hostname]) if not allow
