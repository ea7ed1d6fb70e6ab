"""
What `scripts/dev` asks of PostgreSQL and Redis, run with NetBox's interpreter (psycopg and redis-py are NetBox's).

    service_admin.py probe PORT USERS WAIT ICU_SQL        one JSON object: the first role of USERS (comma-separated)
                                                         that logs in without a password, the server version, whether
                                                         ICU_SQL (an ICU collation) can be created, in a transaction
                                                         rolled back
    service_admin.py createdb HOST PORT USER NAME [--fresh] [--template T]
                                                         create database NAME when missing (--fresh: drop it first)
    service_admin.py dropdb HOST PORT USER NAME...        drop those databases that exist (their sessions ended)
    service_admin.py flush-redis PORT DB                 empty one Redis database
"""

import argparse
import json
import time

__all__ = ('create_database', 'drop_databases', 'flush_redis', 'main', 'probe')


def probe(port, users, wait, icu_sql):
    import psycopg

    result = {'user': None, 'version': None, 'icu': None, 'error': None}
    deadline = time.monotonic() + wait
    conn = None
    for user in users:
        while conn is None:
            try:
                conn = psycopg.connect(host='127.0.0.1', port=port, user=user, dbname='postgres', connect_timeout=3,
                                       autocommit=True)
            except psycopg.OperationalError as e:
                result['error'] = str(e).strip()
                if 'starting up' not in str(e) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        if conn is not None:
            result['user'] = user
            break
    if conn is None:
        return result
    result['version'] = conn.info.server_version
    result['error'] = None
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(icu_sql)
        result['icu'] = True
    except psycopg.errors.FeatureNotSupported as e:
        result['icu'] = False
        result['error'] = str(e).strip()
    except psycopg.Error as e:
        result['error'] = f'{type(e).__name__}: {str(e).strip()}'
    return result


def _drop(conn, name):
    from psycopg import sql

    conn.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))


def create_database(host, port, user, name, fresh=False, template=None):
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=host, port=port, user=user, dbname='postgres', autocommit=True) as conn:
        if fresh:
            _drop(conn, name)
        if conn.execute('SELECT 1 FROM pg_database WHERE datname = %s', [name]).fetchone():
            return
        create = sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name))
        if template:
            create += sql.SQL(' TEMPLATE {}').format(sql.Identifier(template))
        conn.execute(create)


def drop_databases(host, port, user, names):
    import psycopg

    with psycopg.connect(host=host, port=port, user=user, dbname='postgres', autocommit=True) as conn:
        for name in names:
            _drop(conn, name)


def flush_redis(port, db):
    import redis

    redis.Redis(host='127.0.0.1', port=port, db=db).flushdb()


def main(argv=None):
    parser = argparse.ArgumentParser(prog='service_admin.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    cmd = sub.add_parser('probe')
    cmd.add_argument('port', type=int)
    cmd.add_argument('users')
    cmd.add_argument('wait', type=float)
    cmd.add_argument('icu_sql')
    cmd = sub.add_parser('createdb')
    for name in ('host', 'port', 'user', 'name'):
        cmd.add_argument(name)
    cmd.add_argument('--fresh', action='store_true')
    cmd.add_argument('--template')
    cmd = sub.add_parser('dropdb')
    for name in ('host', 'port', 'user'):
        cmd.add_argument(name)
    cmd.add_argument('names', nargs='+')
    cmd = sub.add_parser('flush-redis')
    cmd.add_argument('port', type=int)
    cmd.add_argument('db', type=int)
    args = parser.parse_args(argv)
    if args.command == 'probe':
        users = [user for user in args.users.split(',') if user]
        print(json.dumps(probe(args.port, users, args.wait, args.icu_sql)))
    elif args.command == 'createdb':
        create_database(args.host, int(args.port), args.user, args.name, fresh=args.fresh, template=args.template)
    elif args.command == 'dropdb':
        drop_databases(args.host, int(args.port), args.user, args.names)
    else:
        flush_redis(args.port, args.db)


if __name__ == '__main__':
    main()
