-- Reserved for the monitoring work; replace the no-op statements when that work needs schema changes.

-- migrate:up
SELECT 1;

-- migrate:down
SELECT 1;
