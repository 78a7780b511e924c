-- Enterprise names and usernames are topic levels (`{enterprise}/im/msg/{user}`), so each has
-- one spelling: two names that differ only in case are one name. The API keeps new names in
-- lowercase; these indexes make the database refuse a second spelling too, and serve the
-- lookups by lower(name). If creating one fails, two existing names differ only in case:
-- rename one of them, then start again.
CREATE UNIQUE INDEX enterprises_by_lower_name ON enterprises (lower(name));
CREATE UNIQUE INDEX users_by_lower_username ON users (enterprise_id, lower(username));
