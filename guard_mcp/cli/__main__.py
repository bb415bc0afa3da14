from guard_mcp.cli import main

main()
