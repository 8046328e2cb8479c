"""Validate YAML config files against tidekeeper's JSON Schemas with
python-jsonschema (an implementation independent of the one that wrote
them). Arguments: SCHEMA_DIR then KIND=PATH pairs. Prints one line per
failure, `PATH: message (at key path)`, and exits 1 when any failed."""
import json
import sys

import jsonschema
import yaml

schemas = sys.argv[1]
failed = 0
for arg in sys.argv[2:]:
    kind, path = arg.split("=", 1)
    with open(f"{schemas}/{kind}.json") as f:
        schema = json.load(f)
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    with open(path) as f:
        doc = yaml.safe_load(f)
    for e in validator(schema).iter_errors(doc):
        failed += 1
        where = "/".join(str(p) for p in e.absolute_path)
        print(f"{path}: {e.message} (at {where or 'top'})")
sys.exit(1 if failed else 0)
