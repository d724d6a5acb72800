def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    balls = image_patch.find("ball")
    players = image_patch.find("person")
    if not balls or not players:
        return "N/A"
    players.sort(key=lambda player: distance(player, balls[0]))
    return players[0].query("What color is this player wearing?")
